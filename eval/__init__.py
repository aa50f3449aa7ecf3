"""Evaluation of casewise: questions through the agent, RAGAS and project metrics, report, gate.

Nothing else in the project imports this package; it sits on top of `retrieval`, `agent` and
`finetune`.
"""
