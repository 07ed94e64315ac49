"""visionzoo.data"""
