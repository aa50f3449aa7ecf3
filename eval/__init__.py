"""Evaluation of casewise: question sets through the agent, RAGAS and project metrics, reports, gate.

Nothing else in the project imports this package; it sits on top of `retrieval`, `agent` and
`finetune`.
"""
