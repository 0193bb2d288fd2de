"""Configuration: the INI reader (`ini`) and the frozen, validated model with its cross-checks
(`model`). Nothing past `model.load` sees a raw string."""
