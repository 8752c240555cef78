"""Safety and RL methods as plain tensor functions and small modules; nothing here imports Ray."""
