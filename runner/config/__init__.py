"""Config checking: the rules each key's value must meet, and the callables `_target_` names."""
