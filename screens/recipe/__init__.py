"""The Recipe view: the seven steps' map, and every step run with one key."""

from screens.recipe.screen import RecipeScreen

__all__ = ["RecipeScreen"]
