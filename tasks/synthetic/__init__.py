"""The synthetic stage: user profiles, platforms and availability, and the templated media catalog."""
