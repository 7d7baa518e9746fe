"""Tool use: tools described in OpenAI's format and calls checked against them (schema.py)."""

from alignlab.tools.schema import ToolArgumentError, ToolSchemaError, check_arguments, function_schema, type_schema

__all__ = ["ToolArgumentError", "ToolSchemaError", "check_arguments", "function_schema", "type_schema"]
