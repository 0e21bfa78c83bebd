"""Chat: a conversation with an instruct model through its chat template, keeping the KV cache across turns.

`ChatSession(model, tokenizer, system=...)`: `send(text)` streams a reply, `ask(text)` returns it, `reset()`
starts over; `history` says per turn how many prompt tokens were prefilled and how many came from the cache.
`scratch chat --model PATH_OR_ID` is the command line (cli.py). See docs/chat.md.
"""
from scratch.chat.session import ChatSession, TurnStats, end_of_turn_ids

__all__ = ["ChatSession", "TurnStats", "end_of_turn_ids"]
