"""The config schema: every key of the node's TOML file declared once (schema.keys), the
checked reader and the one TOML writer (schema.core), the reference docs (schema.docs).

This package imports no runtime code; runtime code and plug-ins import it.
"""
from schema.core import ADDRESS, REQUIRED, ConfigError, FieldError, Key, Reader, Section, dump_toml, toml_value
from schema.keys import SECTIONS, plugin_section, plugins, restart_sections

__all__ = ["ADDRESS", "REQUIRED", "ConfigError", "FieldError", "Key", "Reader", "Section", "SECTIONS",
           "dump_toml", "plugin_section", "plugins", "restart_sections", "toml_value"]
