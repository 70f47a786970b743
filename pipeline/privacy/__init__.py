"""Privacy and hostile input: plausible event times, pseudonymised identifiers, erasure, and the
guards on the analyst endpoints. README "Privacy and security" explains the choices."""
