"""The support agent: a LangGraph graph (retrieve, grade, reason, answer), FAQ match,
conversation memory, LLM backends and the chat CLI.
"""
