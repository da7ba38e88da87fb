"""Developer tools around the locked dependency set: lockfile (read, check, sync), check_latest, smoke."""
