"""TinyWorld's chat template: ChatML's structure with one special token per role, and no newlines.

    <|system|>You are Tiny, ...<|end|><|user|>What is 23 + 45?<|end|><|assistant|><think>23 + 40 = 63
    63 + 5 = 68</think>
    Answer: 68<|end|>

A turn costs two tokens of markup (role token, <|end|>) where ChatML costs five (<|im_start|>,
the role, "\\n", <|im_end|>, "\\n"). Tools are listed in the system turn as one short line,
"Tools: calculator(expression)", instead of ChatML's ~150-token preamble with the JSON schemas (a
TinyWorld model only ever sees the one calculator). Calls are written as the built-in chatml
template writes them, minus its newlines -- <tool_call>{"name": ..., "arguments": {...}}</tool_call>
-- after the assistant's text, and tool results come back in a <|tool|> turn.

`<|end|>` is one of the end-of-turn tokens alignlab's tokenizers stop generation on
(`alignlab.text.END_OF_TURN_TOKENS`). Renderings of successive prefixes extend each other, so
`alignlab.text.render_chat` can cut out the assistant turns for the loss mask.
"""

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>")

CHAT_TEMPLATE = """\
{%- set has_system = messages and messages[0].role == 'system' %}
{%- if has_system or tools %}
    {{- '<|system|>' }}
    {%- if has_system %}
        {{- messages[0].content }}
    {%- endif %}
    {%- if tools %}
        {{- ('\\n' if has_system else '') + 'Tools:' }}
        {%- for tool in tools %}
            {%- set f = tool.function if tool.function is defined else tool %}
            {{- ' ' + f.name + '(' + (f.parameters.properties | list | join(', ')) + ')' }}
        {%- endfor %}
    {%- endif %}
    {{- '<|end|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' %}
        {{- '<|assistant|>' + (message.content or '') }}
        {%- for call in message.tool_calls or [] %}
            {%- set call = call.function if call.function is defined else call %}
            {{- '<tool_call>{"name": "' + call.name + '", "arguments": ' }}
            {{- call.arguments if call.arguments is string else call.arguments | tojson }}
            {{- '}</tool_call>' }}
        {%- endfor %}
        {{- '<|end|>' }}
    {%- else %}
        {{- '<|' + message.role + '|>' + message.content + '<|end|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- endif %}
"""
