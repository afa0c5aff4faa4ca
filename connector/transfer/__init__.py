"""The data plane: transfers under agreements, their sources, masking, metering and holdings."""
