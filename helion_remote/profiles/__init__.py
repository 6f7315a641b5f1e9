"""Built-in target profiles (JSON data); load them with ``helion_remote.target.load_profile``."""
