"""``python -m tinyvit_backbone.distill <command>`` (console script ``tinyvit-distill``).

Parsing lives in :mod:`.arguments`, the commands in :mod:`.commands` (imported only once a
command runs, so ``--help`` loads neither torch nor timm); this module follows the project's CLI
convention (:mod:`tinyvit_backbone.cli`): one JSON result on stdout from rank 0, ``error:``
lines and exit status 2 for bad input, 1 when ``verify`` finds a problem.
"""
from __future__ import annotations

import sys

from ..cli import run_commands
from .arguments import build_parser
from .errors import DistillError

COMMAND_NAMES = ("save-logits", "verify", "train", "finetune", "mini-repro", "convert-store")


def _command(name: str):
    def run(args):
        from ..checkpoint import CheckpointError
        from .commands import COMMANDS

        try:
            return COMMANDS[name](args)
        except CheckpointError as err:  # a weights file that does not fit: bad input too
            raise DistillError(str(err)) from None
    return run


def _is_main(args, result) -> bool:
    from ..distributed import dist_env_from_environ

    return dist_env_from_environ().rank == 0


def _exit_code(args, result) -> int:
    return 1 if args.command == "verify" and not result.get("ok") else 0


def _shutdown() -> None:
    if "torch.distributed" in sys.modules:
        from ..distributed import shutdown_distributed

        shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    return run_commands(build_parser(), {name: _command(name) for name in COMMAND_NAMES}, argv,
                        errors=(DistillError,), emit=_is_main, exit_code=_exit_code,
                        finally_=_shutdown)


if __name__ == "__main__":
    sys.exit(main())
