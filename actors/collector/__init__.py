"""The trace collector: stores every trace event, answers queries, exports OTLP."""
