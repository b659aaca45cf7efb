"""Campaign reports (plots, leaderboard with lineage) and the RL export of executed ideas."""
