"""The Kafka transport: the transactional producer, read_committed consumers, topic names and
explicit topic creation, behind the ``Transport`` interface the pipeline uses.
"""
