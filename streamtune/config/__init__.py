"""Step 0, the recipe: the config schema (``schema``) and how a recipe is found, merged with overrides, checked
and saved (``loading``)."""
