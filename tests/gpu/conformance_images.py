"""The conformance suite's image cases: a chat whose user turn carries a PNG as an OpenAI `image_url` (a
base64 data URL, or a file:// URL the server reads), sent to SGLang with its prompt and output token ids
and output logprobs; and the same chat as transformers' processor builds it, for the float32 reference of
the checkpoint's vision tower and language model. No SGLang, no GPU."""

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROMPT = "Describe this image in one sentence."


@dataclass(frozen=True)
class Image:
    form: str  # how the image_url carries it: "base64" (data URL) or "file" (file:// URL)
    width: int
    height: int


# Multiples of 32 (patch 16 x merge 2) with at least the processor's 65536 pixels, so neither SGLang nor
# transformers resizes them and both feed the tower the same pixels; the second is not square, so the
# (height, width) rotary split is exercised too.
IMAGES = (Image("base64", 256, 256), Image("file", 320, 256))


def png(image: Image) -> bytes:
    """A deterministic picture: colour gradients over a checkerboard, so every patch differs."""
    from PIL import Image as PILImage

    y, x = np.mgrid[: image.height, : image.width]
    pixels = np.stack([x * 255 // (image.width - 1), y * 255 // (image.height - 1), ((x // 32 + y // 32) % 2) * 200 + 27], -1)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_pngs(directory: Path) -> dict[Image, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {image: directory / f"{image.form}-{image.width}x{image.height}.png" for image in IMAGES}
    for image, path in paths.items():
        path.write_bytes(png(image))
    return paths


def data_url(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def image_url(image: Image, path: Path) -> str:
    return data_url(path.read_bytes()) if image.form == "base64" else path.resolve().as_uri()


def chat_request(url: str, model: str, new_tokens: int) -> dict:
    """A greedy OpenAI chat completion that SGLang answers with the prompt and output token ids
    (`return_token_ids`, an SGLang extension) and the output tokens' logprobs."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}]}],
        "max_completion_tokens": new_tokens, "temperature": 0, "ignore_eos": True, "logprobs": True,
        "return_token_ids": True, "chat_template_kwargs": {"enable_thinking": False},
    }  # fmt: skip


@dataclass
class Answer:
    form: str
    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]  # of each output token


def parse_answer(form: str, response: dict) -> Answer:
    """The ids and logprobs of a `chat_request` response; ValueError when SGLang left them out."""
    choice = response["choices"][0]
    logprobs = [token["logprob"] for token in (choice.get("logprobs") or {}).get("content") or []]
    if not choice.get("prompt_token_ids") or not choice.get("token_ids") or len(logprobs) != len(choice["token_ids"]):
        raise ValueError(f"the chat completion lacks token ids or logprobs: {str(choice)[:300]}")
    return Answer(form, choice["prompt_token_ids"], choice["token_ids"], logprobs)


def reference_inputs(processor, picture: bytes, output_ids: list[int] = ()) -> dict:
    """The model inputs transformers' `processor` builds for the chat of `chat_request` with `picture`, the
    generation prompt followed by `output_ids` (teacher forcing)."""
    import torch
    from PIL import Image as PILImage

    messages = [{"role": "user", "content": [{"type": "image", "image": PILImage.open(io.BytesIO(picture))}, {"type": "text", "text": PROMPT}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", enable_thinking=False)  # fmt: skip
    more = torch.tensor([list(output_ids)], dtype=inputs["input_ids"].dtype)
    filler = {"input_ids": more, "attention_mask": torch.ones_like(more), "mm_token_type_ids": torch.zeros_like(more)}
    for key, tail in filler.items():
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], tail], dim=1)
    return dict(inputs)


def image_token_count(processor, inputs: dict) -> tuple[int, int]:
    """(image tokens in the prompt, image tokens the processor's grid implies: t*h*w / merge^2)."""
    merge = processor.image_processor.merge_size
    return int((inputs["input_ids"] == processor.image_token_id).sum()), int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2
