"""The one exception type the launcher shows to a user.

Every failure a user can cause or fix (bad recipe, wrong machine, port taken, server died) is raised as
a `LaunchError` whose message says what is wrong, where, and what to do; `python -m launch` prints it
without a traceback and exits non-zero.
"""


class LaunchError(Exception):
    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1):
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        text = self.args[0]
        return f"{text}\n  fix: {self.hint}" if self.hint else text
