"""annfleet.router"""
