"""annfleet.client"""
