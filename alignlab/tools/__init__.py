"""Tool use: tools described in OpenAI's format and calls checked against them (schema.py); tool calls written and
read in the formats open models use (calls.py); calls run and answered as `role: tool` messages (executor.py); a
model's Python run in a sandboxed child process (sandbox.py)."""

from alignlab.tools.calls import FORMATS, CallFormatError, format_calls, parse_calls
from alignlab.tools.executor import ToolBox
from alignlab.tools.schema import ToolArgumentError, ToolSchemaError, check_arguments, function_schema, type_schema

__all__ = ["FORMATS", "CallFormatError", "ToolArgumentError", "ToolBox", "ToolSchemaError", "check_arguments",
           "format_calls", "function_schema", "parse_calls", "type_schema"]
