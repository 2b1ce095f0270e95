"""``python -m polyaudio_rl.tiny --family F --out DIR [--seed N]`` / ``--list-families``: the command-line entry of
:mod:`polyaudio_rl.core.tiny`."""
from polyaudio_rl.core.tiny import main

if __name__ == "__main__":
    main()
