"""The Guide–Core Policy (GCoP): a trainable guide writes a strategy for the problem and a
black-box core answers the problem given that strategy. Here: the strategy format, the prompts,
one verified execution, the follow check and executability."""
