"""Ask edgellm through the unmodified `openai` package (pip install openai).

The key is only checked when the node sets http.api_key; otherwise any string will do.
EDGELLM_URL names another node (default: this machine, ollama's port).
"""

import os

from openai import OpenAI

url = os.environ.get("EDGELLM_URL", "http://127.0.0.1:11434")
client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("EDGELLM_KEY", "unused"))

print([m.id for m in client.models.list().data])

stream = client.chat.completions.create(
    model="smollm2-135m",
    messages=[
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three uses for a Raspberry Pi."},
    ],
    max_tokens=80,
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
