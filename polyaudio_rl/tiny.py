"""``python -m polyaudio_rl.tiny --out DIR [--seed N] [--hidden-size H --num-hidden-layers L ...]``: the command-line entry of :mod:`polyaudio_rl.core.tiny`."""
from polyaudio_rl.core.tiny import main

if __name__ == "__main__":
    main()
