"""The grader: grades an outcome's attempt in a fresh context."""
