"""Adapters that plug isol8 into agent frameworks, one module per framework.

Each module imports its framework only when it is imported itself (the frameworks are
optional extras: ``isol8[smolagents]``, ``isol8[openai-agents]``, ``isol8[langchain]``,
``isol8[pydantic-ai]``), so ``import isol8.integrations`` costs nothing. The function tools
(LangChain, pydantic-ai) hand the model the small contract of isol8.integrations.contract;
the executor and provider adapters (smolagents, the OpenAI Agents SDK) map results onto
their framework's own types, with the same failure sentences.
"""
