"""The validate stage: the Great Expectations suites in expectations/, after each stage and the loads."""
