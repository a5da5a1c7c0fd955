"""The web dashboard (``conveyor[dashboard]``): a Starlette app over the inspector."""
