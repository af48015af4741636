"""Segment ids of a thinking completion.

    <prompt tokens> <think> thinking tokens </think> response tokens <eos>
       PROMPT       THINK ........................ RESPONSE .............

The `<think>` and `</think>` tags belong to THINK; `<eos>` belongs to RESPONSE.
Padding is PAD (0), wherever it occurs in a row.
"""

PAD = 0
PROMPT = 1
THINK = 2
RESPONSE = 3

NAMES = {PAD: "pad", PROMPT: "prompt", THINK: "think", RESPONSE: "response"}
