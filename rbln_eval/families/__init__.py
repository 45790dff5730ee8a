"""Model families: the policy of each kind of model, as plugins behind one registry (:mod:`.registry`)."""
