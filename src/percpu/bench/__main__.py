"""``python -m percpu.bench list|run ...``"""
import sys

from percpu.bench._cli import main

if __name__ == "__main__":
    sys.exit(main())
