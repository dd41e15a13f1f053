"""The course's lessons as tools: diagnosis, gradient checking, gradient monitoring, experiment suites."""
