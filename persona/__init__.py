"""Persona profiles (one folder each) and their seed data; loaded by :mod:`bot.core.persona`."""
