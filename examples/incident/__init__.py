"""The incident example: a bad deploy, the data it leaves behind, and a team that investigates it."""
