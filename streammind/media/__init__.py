"""Media I/O: video decoding on the frame grid (`video`) and live or recorded sources (`sources`)."""
