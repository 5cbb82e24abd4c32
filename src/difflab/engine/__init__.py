"""Generation over diffusers, for every model family."""
