"""python -m center --config FILE"""

import sys
from pathlib import Path

from center.bootstrap import build
from jukinet.config import load_config
from jukinet.rpc.runtime import run_node

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--config":
        raise SystemExit("usage: python -m center --config FILE")
    run_node(load_config(Path(sys.argv[2])), build)
