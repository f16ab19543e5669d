"""`vmatch serve`: an HTTP matching service with HMA's API over vmatch indexes (one per bank)."""
