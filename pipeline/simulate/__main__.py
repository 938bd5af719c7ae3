"""``python -m pipeline.simulate``: the same as ``python -m pipeline simulate``."""

import argparse
import asyncio
import contextlib

from pipeline.simulate import add_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.simulate", description=__doc__)
    add_arguments(parser)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
