"""polyaudio_rl."""
