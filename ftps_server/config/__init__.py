"""Configuration: the INI reader (`ini`), the frozen model (`model`), each section's parser
(`sections`), and `loader.load`, which reads a file into a validated `Config` with the rules
across sections. Nothing past `loader.load` sees a raw string."""
