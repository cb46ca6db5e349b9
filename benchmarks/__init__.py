"""annfleet.benchmarks"""
