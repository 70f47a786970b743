"""Development tools that work from a source checkout and are not part of the touchline package."""
