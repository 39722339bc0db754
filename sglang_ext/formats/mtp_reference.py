"""A reference forward of a checkpoint's MTP head, and how often it agrees with the greedy main model.

transformers models the Qwen3.5-MoE main model but skips `mtp.*` on load, so the head is rebuilt here from
transformers' own parts, as SGLang's `Qwen3_5ForCausalLMMTP.forward` (sglang/srt/models/qwen3_5_mtp.py)
computes it: at position i the head reads the embedding of token i+1 and the main model's final (normed)
hidden state at i, `fc(cat(pre_fc_norm_embedding(e), pre_fc_norm_hidden(h)))`, runs one full-attention
decoder layer and `mtp.norm`, and scores with the shared lm_head: a prediction of token i+2.
"""

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from sglang_ext.fixtures.tensors import fuse_experts
from sglang_ext.formats.dequantize import write_dequantized
from sglang_ext.formats.layout import mtp_experts_fused
from sglang_ext.formats.reference import reference_model


class MtpReference(nn.Module):
    def __init__(self, text_config: dict, state: dict[str, torch.Tensor]) -> None:
        from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig
        from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeRMSNorm, Qwen3_5MoeTextModel

        super().__init__()
        hidden = text_config["hidden_size"]
        config = Qwen3_5MoeTextConfig(**{**text_config, "num_hidden_layers": 1, "layer_types": ["full_attention"]})
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.pre_fc_norm_embedding = Qwen3_5MoeRMSNorm(hidden, eps=config.rms_norm_eps)
        self.pre_fc_norm_hidden = Qwen3_5MoeRMSNorm(hidden, eps=config.rms_norm_eps)
        self.model = Qwen3_5MoeTextModel(config)
        if not mtp_experts_fused(state):
            state = fuse_experts(state, text_config, mtp=True)
        mtp = {}
        for name, tensor in state.items():
            if name.startswith("mtp.layers.0.") or name == "mtp.norm.weight":
                mtp["model." + name.removeprefix("mtp.")] = tensor
            elif name.startswith(("mtp.fc.", "mtp.pre_fc_norm_")):
                mtp[name.removeprefix("mtp.")] = tensor
        missing, unexpected = self.load_state_dict(mtp, strict=False)
        unloaded = [name for name in missing if not name.startswith(("model.embed_tokens.", "model.rotary_emb."))]
        if unloaded or unexpected:
            raise ValueError(f"MTP head does not match its config: missing {unloaded[:3]}, unexpected {unexpected[:3]}")

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The head's final hidden states for a batch of sequences ([B, L, H] each); score with lm_head."""
        joined = torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], dim=-1)
        return self.model(inputs_embeds=self.fc(joined), use_cache=False).last_hidden_state


def greedy_agreement(checkpoint: Path, prompts: list[list[int]], new_tokens: int, device: str = "cpu") -> tuple[int, int]:
    """(positions where the MTP head predicts the main model's greedy next token, positions compared) over
    greedy continuations of `prompts`, computed in float32 on the dequantized weights with the format's
    activation quantization (`reference.reference_model`)."""
    checkpoint = Path(checkpoint)
    text = json.loads((checkpoint / "config.json").read_text())["text_config"]
    with tempfile.TemporaryDirectory() as scratch:
        dequantized = write_dequantized(checkpoint, Path(scratch))
        main = reference_model(checkpoint, dequantized, device)
        mtp = {name: t.float() for name, t in load_file(str(dequantized / "model.safetensors")).items() if name.startswith("mtp.")}
    head = MtpReference(text, mtp).to(device).eval()
    embed, lm_head = main.get_input_embeddings(), main.get_output_embeddings()
    agree = compared = 0
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            ids = main.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
            hidden = main.model(input_ids=ids).last_hidden_state
            main_next = lm_head(hidden).argmax(-1)[0]  # main's prediction of token j+1 at position j
            drafted = lm_head(head(embed(ids[:, 1:]), hidden[:, :-1])).argmax(-1)[0]  # of token i+2 at i
            first = len(prompt) - 1  # the first position whose next token the main model generated
            agree += int((drafted[first:] == main_next[first + 1 :]).sum())
            compared += len(drafted) - first
    return agree, compared
