"""cauldron"""
