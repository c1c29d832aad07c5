"""PyTorch models: NRMS (news + user encoders) and the two-tower retriever."""
