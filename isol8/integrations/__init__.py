"""Adapters that plug isol8 into agent frameworks, one module per framework.

Each module imports its framework only when it is imported itself (the frameworks are
optional extras: ``isol8[smolagents]``, ``isol8[openai-agents]``, ``isol8[langchain]``,
``isol8[pydantic-ai]``), so ``import isol8.integrations`` costs nothing. Every adapter
hands the model the same small contract (isol8.integrations.contract).
"""
