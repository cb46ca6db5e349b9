"""annfleet.model"""
